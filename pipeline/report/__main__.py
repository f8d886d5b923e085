"""DVC stage `report`: the papers' comparison tables, claim checks and figures from the sweeps.

    python -m pipeline.report [--params params.yaml]

Reads `results/<dataset>.json` for every dataset of `study.datasets` (and `sweep.losses` /
`sweep.seeds`, to count planned trials that are missing) and writes, under `report.output`:

    tables.md, tables.tex    per dataset: losses x (mIoU, image-mIoU, mPixIoU, Δ vs baselines,
                             published); per class IoU, image-IoU and PixIoU; the claim
                             checks (Holm-corrected);
                             the gradient study
    results.csv              one row per trial, failed and missing ones included
    metrics.json             DVC metrics: means, stds, trial counts, claim verdicts
    figures/*.png            mIoU and image-mIoU per seed, validation curves, per-class bars,
                             gradient study
    plots/**.csv             DVC plots data: validation curves, gradient study

Everything is read and checked before anything is written; the same inputs give the same bytes.
Then tables.md and the figures are attached to each sweep's MLflow parent run (`report/`), when
the store (params.yaml `tracking`) has it.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..measures import IMAGE_MIOU, MIOU, MPIXIOU, PER_CLASS
from ..params import ParamsError, load_params, lookup, parse_section
from ..study_losses import StudyLoss
from . import figures
from .compare import (
    ClaimParams,
    LossRow,
    PlateauParams,
    check_claim,
    correct_for_family,
    loss_rows,
)
from .convergence import ConvergenceReportParams, band_csv, convergence_rows, convergence_table
from .gradients import COLUMNS, gradient_study, summary_rows
from .published import PublishedError, find, load_published
from .results import (
    CONVERGENCE,
    FINISHED,
    METRICS,
    MIOU_AUC,
    MISSING,
    DatasetResults,
    ResultsError,
    load_results,
)
from .tables import (
    claims_table,
    data_table,
    dataset_table,
    gradient_table,
    latex,
    markdown,
    per_class_table,
)

#: PixIoU's formulas were not available to this project: the claims are checked against its
#: reconstruction.
PIXIOU_SOURCE = "Yu et al. 2021, PixIoU as defined in docs/pixiou.md"


def _default_claims() -> list[ClaimParams]:
    return [ClaimParams("lovasz", "ce", MIOU, "Berman et al. 2018"),
            ClaimParams("lovasz_img", "lovasz", IMAGE_MIOU, "Berman et al. 2018"),
            ClaimParams("lovasz", "lovasz_img", MIOU, "Berman et al. 2018"),
            ClaimParams("pixiou", "lovasz", MIOU, PIXIOU_SOURCE),
            ClaimParams("pixiou", "lovasz", MPIXIOU, PIXIOU_SOURCE),
            ClaimParams("pixiou", "lovasz", MIOU_AUC, "Yu et al. 2021", CONVERGENCE)]


@dataclass
class ReportParams:
    """params.yaml: report."""

    baselines: list[str] = field(default_factory=lambda: ["ce", "lovasz"])
    claims: list[ClaimParams] = field(default_factory=_default_claims)
    confidence: float = 0.95
    plateau: PlateauParams = field(default_factory=PlateauParams)
    convergence: ConvergenceReportParams = field(default_factory=ConvergenceReportParams)
    published: str = "reports/published.yaml"
    results_dir: str = "results"
    output: str = "reports"

    def validate(self, where: str) -> None:
        if not 0 < self.confidence < 1:
            raise ParamsError(f"params.yaml: {where}.confidence must lie in (0, 1), "
                              f"got {self.confidence}")


@dataclass
class Report:
    """Every file of the report, as bytes or as a figure to draw, before anything is written."""

    texts: dict[str, str]
    metrics: dict  # the content of metrics.json
    studies: list[tuple[DatasetResults, list[LossRow]]]
    gradient_points: list[dict]
    thresholds: list[float | None] = field(default_factory=list)  # convergence, per study


def load_report_params(params: dict) -> tuple[ReportParams, list[str], list[str], list[int],
                                              dict[str, StudyLoss], list[str]]:
    report = parse_section(ReportParams, params.get("report", {}), "report")
    datasets = lookup(params, "study.datasets")
    losses, seeds = lookup(params, "sweep.losses"), lookup(params, "sweep.seeds")
    convergence = (lookup(params, "sweep").get("convergence") or {}).get("losses") or []
    raw = lookup(params, "train.losses")
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: train.losses must be a mapping, got {raw!r}")
    known = {key: parse_section(StudyLoss, value, f"train.losses.{key}")
             for key, value in raw.items()}
    for where, key in [*((f"report.baselines[{i}]", b) for i, b in enumerate(report.baselines)),
                       ("report.convergence.reference", report.convergence.reference),
                       *((f"report.claims[{i}].{side}", getattr(c, side))
                         for i, c in enumerate(report.claims) for side in ("better", "worse"))]:
        if key not in known:
            raise ParamsError(f"params.yaml: {where} is '{key}', not a key of train.losses "
                              f"({', '.join(known)})")
    return report, datasets, losses, seeds, known, convergence


def build(params_file: Path | str = "params.yaml") -> tuple[ReportParams, Report]:
    params = load_params(params_file)
    report, datasets, planned_losses, planned_seeds, known, planned_convergence = \
        load_report_params(params)
    published = load_published(Path(report.published))
    studies, md, tex, claims, thresholds = [], [], [], [], []
    for dataset in datasets:
        results = load_results(Path(report.results_dir) / f"{dataset}.json", dataset,
                               planned_losses, planned_seeds, known, planned_convergence)
        rows = loss_rows(results, report.baselines, report.confidence, report.plateau)
        iterations = {t.iterations for t in results.trials if t.status == FINISHED}
        matches = {row.loss: find(published, dataset, results.config,
                                  next(iter(iterations)) if len(iterations) == 1 else None,
                                  row.terms, "mIoU") for row in rows}
        tables = [dataset_table(results, rows, report.baselines, matches, report.confidence),
                  *(per_class_table(results, rows, PER_CLASS[m]) for m in METRICS)]
        if results.convergence:
            threshold, arm_rows = convergence_rows(results, report.convergence,
                                                   report.confidence)
            tables.append(convergence_table(results, arm_rows, threshold, report.convergence,
                                            report.confidence))
            thresholds.append(threshold)
        else:
            thresholds.append(None)
        tables += [t for t in (data_table(results),) if t is not None]
        md += [markdown(t) for t in tables]
        tex += [latex(t) for t in tables]
        claims += [check_claim(c, results, report.confidence, report.plateau)
                   for c in report.claims]
        studies.append((results, rows))
    claims = correct_for_family(claims)
    points = gradient_study()
    front = [claims_table(claims, report.confidence), gradient_table(summary_rows(points))]
    metrics = _metrics(studies, claims)
    texts = {
        "tables.md": _markdown_document([markdown(t) for t in front[:1]] + md +
                                        [markdown(front[1]),
                                         _figure_links(studies, _has_arm(studies))]),
        "tables.tex": "% Generated by `dvc repro report` (pipeline/report). Needs booktabs.\n\n"
                      + "\n".join([latex(front[0]), *tex, latex(front[1])]),
        "results.csv": _results_csv(studies),
        "metrics.json": json.dumps(metrics, indent=2, sort_keys=True) + "\n",
    }
    for results, rows in studies:
        for row in rows:
            texts[f"plots/validation/{results.dataset}_{row.loss}.csv"] = _curve_csv(
                results.loss(row.loss))
        for losses in results.convergence:
            texts[f"plots/convergence/{results.dataset}_{losses.loss}.csv"] = band_csv(
                losses, report.confidence)
    for case in sorted({p["case"] for p in points}):
        texts[f"plots/gradient_study/{case.replace(' ', '_')}.csv"] = _gradient_csv(
            [p for p in points if p["case"] == case])
    return report, Report(texts, metrics, studies, points, thresholds)


def _has_arm(studies) -> bool:
    return any(results.convergence for results, _ in studies)


def _markdown_document(parts: list[str]) -> str:
    head = ("# The study's results\n\n"
            "<!-- Generated by `dvc repro report` (pipeline/report) from results/*.json; "
            "do not edit. -->\n\n")
    return head + "\n".join(parts)


def _figure_links(studies, convergence: bool) -> str:
    lines = ["### Figures", "", "![mIoU per seed](figures/miou_per_seed.png)", "",
             "![Validation curves](figures/validation_curves.png)", ""]
    if convergence:
        lines += ["![Convergence arm](figures/convergence_curves.png)", ""]
    lines += [f"![IoU per class, {r.dataset}](figures/per_class_{r.dataset}.png)\n"
              for r, _ in studies]
    lines.append("![Gradient study](figures/gradient_study.png)")
    return "\n".join(lines) + "\n"


def _csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _results_csv(studies) -> str:
    rows = []
    for results, loss_rows_ in studies:
        labels = {**{lr.loss: lr.name for lr in results.convergence},
                  **{row.loss: row.label for row in loss_rows_}}
        for t in [*results.trials, *(t for lr in results.convergence for t in lr.trials)]:
            rows.append([results.dataset, t.arm, t.loss, labels.get(t.loss, t.loss), t.seed,
                         "" if t.lr is None else t.lr, t.status, t.iterations or "",
                         *(t.metrics.get(m, "") for m in METRICS),
                         "" if t.wall_time_s is None else t.wall_time_s,
                         t.mlflow_run_id or "", t.error_line])
    return _csv(["dataset", "arm", "loss", "label", "seed", "lr", "status", "iterations", *METRICS,
                 "wall_time_s", "mlflow_run_id", "error"], rows)


def _curve_csv(loss_results) -> str:
    """Mean validation metrics over the finished seeds at each evaluated iteration."""
    points: dict[int, list[dict]] = {}
    for trial in loss_results.by_status(FINISHED):
        for p in trial.history:
            points.setdefault(p["iteration"], []).append(p)
    rows = [[it, *(round(sum(p[m] for p in ps) / len(ps), 4) for m in METRICS), len(ps)]
            for it, ps in sorted(points.items())]
    return _csv(["iteration", *METRICS, "seeds"], rows)


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower().replace("á", "a"))


def _gradient_csv(points: list[dict]) -> str:
    return _csv(["shift", "iou", *(_slug(column) for column in COLUMNS)],
                [[p["shift"], p["iou"], *(p[column] for column in COLUMNS)] for p in points])


def _rounded(value):
    return None if value is None else round(value, 4)


def _metrics(studies, claims) -> dict:
    metrics: dict = {"trials": {}}
    for results, rows in studies:
        metrics[results.dataset] = {row.loss: {
            **{m: _rounded(row.summaries[m].mean) for m in METRICS},
            **{f"{m}_std": _rounded(row.summaries[m].std) for m in METRICS},
            "plateau_gain": _rounded(row.plateau.gain if row.plateau else None),
            "settled": row.plateau.settled if row.plateau else None,
            "classes_below_1": row.classes_below_1[0] if row.classes_below_1 else None,
            **row.counts} for row in rows}
        for status, count in results.counts().items():
            metrics["trials"][status] = metrics["trials"].get(status, 0) + count
    metrics["claims"] = {}
    for c in claims:
        d = c.difference
        metrics["claims"].setdefault(c.dataset, {})[
            f"{c.claim.better}_vs_{c.claim.worse}_{c.claim.metric}"
            + ("_convergence" if c.claim.arm == CONVERGENCE else "")] = {
            "delta": _rounded(d.mean if d else None), "ci_low": _rounded(d.low if d else None),
            "ci_high": _rounded(d.high if d else None), "seeds": d.n if d else 0,
            "p_value": _rounded(d.p_value if d else None), "p_holm": _rounded(c.adjusted_p),
            "family": c.family, "verdict": c.verdict, "detectable": _rounded(c.detectable),
            "seeds_needed": c.needed}
    return metrics


def write(report: ReportParams, built: Report) -> list[Path]:
    out = Path(report.output)
    # The outputs persist across DVC runs (nothing is lost on an error before this point), so
    # clear the generated folders here: a dataset or loss gone from the study leaves no file.
    for folder in ("figures", "plots"):
        shutil.rmtree(out / folder, ignore_errors=True)
    written = []
    for name, text in built.texts.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    studies, figs = built.studies, out / "figures"
    written.append(figures.miou_per_seed(studies, figs / "miou_per_seed.png"))
    written.append(figures.validation_curves(studies, figs / "validation_curves.png"))
    for results, rows in studies:
        written.append(figures.per_class_bars(results, rows,
                                              figs / f"per_class_{results.dataset}.png"))
    if _has_arm(studies):
        arm = [(results, t) for (results, _), t in zip(studies, built.thresholds, strict=True)
               if results.convergence]
        written.append(figures.convergence_curves(arm, report.confidence,
                                                  figs / "convergence_curves.png"))
    written.append(figures.gradient_study(built.gradient_points, figs / "gradient_study.png"))
    return written


def attach_to_mlflow(params: dict, built: Report, out: Path) -> list[str]:
    """The tables and figures as artifacts (`report/`) of each sweep's MLflow parent run, so
    the comparison reads in the MLflow UI without the repository. A store that does not answer,
    or a run it does not have, is said, never an error: the report itself is written."""
    from ..secret_names import environment_secrets, redact
    from ..tracking import Tracker, TrackingParams

    tracking = parse_section(TrackingParams, params.get("tracking", {}), "tracking")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # one quick try
    tracker = Tracker(tracking)
    attached, problems = [], []
    for results, _ in built.studies:
        parent = json.loads(results.path.read_text()).get("mlflow_parent_run_id")
        if not parent:
            continue
        try:
            tracker.attach_report(parent, out / "tables.md", out / "figures")
            attached.append(f"{results.dataset} (run {parent})")
        except Exception as error:  # noqa: BLE001 - any failure of the store: say it, go on
            said = redact(f"{type(error).__name__}: {error}", environment_secrets())
            problems.append(f"{results.dataset}: MLflow run {parent}: "
                            f"{said.splitlines()[0][:200]}")
    if attached:
        print(f"report: attached to the sweeps' MLflow runs: {', '.join(attached)}")
    for problem in problems:
        print(f"report: warning: not attached to MLflow: {problem}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        report, built = build(args.params)
    except (ParamsError, ResultsError, PublishedError) as error:
        print(f"report: error: {error}", file=sys.stderr)
        return 2
    written = write(report, built)
    attach_to_mlflow(load_params(args.params), built, Path(report.output))
    counts = built.metrics["trials"]
    print(f"report: {len(written)} files in {report.output}/ "
          f"({counts[FINISHED]} finished trials; {counts['failed']} failed, "
          f"{counts['stopped']} stopped, {counts[MISSING]} missing)")
    for dataset, claims in built.metrics["claims"].items():
        for name, claim in sorted(claims.items()):
            print(f"  {dataset}: {name}: {claim['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
