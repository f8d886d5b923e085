"""The report's tables, built once as cells and rendered to Markdown and LaTeX (booktabs).

Numbers are formatted here and only here, with fixed precision, so the same results always give
byte-identical files.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..stats import INCONCLUSIVE, NOT_SETTLED, Difference, Plateau, Summary
from .compare import POWER, ClaimResult, LossRow
from .published import Published
from .results import CONVERGENCE, FAILED, METRICS, MISSING, STOPPED, DatasetResults

DASH = "—"


@dataclass(frozen=True)
class Cell:
    text: str
    bold: bool = False


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    label: str = ""
    text_columns: int = 1  # the leading columns that hold text (left-aligned), not numbers


def number(value: float, signed: bool = False) -> str:
    value = round(value, 2) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def mean_std(summary: Summary) -> str:
    if summary.n == 0:
        return DASH
    if summary.n == 1:
        return f"{number(summary.mean)} (n=1)"
    return f"{number(summary.mean)} ± {number(summary.std)}"


def difference(diff: Difference | None, signed: bool = True) -> str:
    """A mean with its interval: a paired difference (signed), or a mean over seeds."""
    if diff is None or diff.n == 0:
        return DASH
    if diff.low is None:
        return f"{number(diff.mean, signed)} (n={diff.n}, no CI)"
    return (f"{number(diff.mean, signed)} [{number(diff.low, signed)}, "
            f"{number(diff.high, signed)}]")


def _trials_cell(row: LossRow) -> str:
    text = f"{row.counts['finished']}/{row.planned}"
    return f"{text} ({', '.join(row.problems)})" if row.problems else text


def _best(means: list[float | None]) -> set[int]:
    """Indices of the highest value at the shown precision (ties all win); none when every
    shown value is the same, as then nothing is best."""
    shown = [None if m is None else round(m, 2) for m in means]
    values = {m for m in shown if m is not None}
    if len(values) < 2:
        return set()
    return {i for i, m in enumerate(shown) if m == max(values)}


def dataset_table(results: DatasetResults, rows: list[LossRow], baselines: list[str],
                  published: dict[str, Published | None], confidence: float) -> Table:
    """published: loss -> the published number of the same setting, if any."""
    labels = {row.loss: row.label for row in rows}
    ci = f"{confidence:.0%} CI"
    header = ["Loss", "Trials", *METRICS]
    header += [f"Δ{m} vs {labels.get(b, b)} [{ci}]" for m in METRICS for b in baselines]
    header.append("Published mIoU")
    best = {m: _best([row.summaries[m].mean for row in rows]) for m in METRICS}
    sources: list[Published] = []
    body = []
    for i, row in enumerate(rows):
        cells = [Cell(row.label), Cell(_trials_cell(row))]
        cells += [Cell(mean_std(row.summaries[m]), i in best[m]) for m in METRICS]
        cells += [Cell(DASH if row.loss == b else difference(row.deltas[b, m]))
                  for m in METRICS for b in baselines]
        match = published[row.loss]
        if match is None:
            cells.append(Cell("not known"))
        else:
            if match not in sources:
                sources.append(match)
            cells.append(Cell(f"{number(match.value)} [{sources.index(match) + 1}]"))
        body.append(cells)
    iterations = sorted({t.iterations for t in results.trials if t.iterations})
    notes = [
        f"{results.dataset}, config `{results.config}`, {results.protocol()}, "
        f"{'/'.join(map(str, iterations)) or '?'} iterations. Mean ± std over the finished "
        f"seeds; Trials: finished/planned. Δ: mean of the paired differences over the seeds "
        f"both losses finished, with its {ci} (Student t), not corrected for the number of "
        f"comparisons (the claims table is); the best mean in bold.",
        "mIoU: each class's IoU over the whole validation set (Σ intersections / Σ unions), "
        "what a batch (whole-dataset) Jaccard loss optimises. image-mIoU: each image's own IoU "
        "per class, averaged over the images where the class is in the ground truth or the "
        "prediction, then over the classes (Berman et al.'s per-image Jaccard; docs/study.md, "
        "\"The measures\").",
        "mPixIoU can be negative: per class, PixIoU lies in (2·IoU − 1, IoU] "
        "(docs/pixiou.md), so a class the model rarely or never predicts, with IoU near 0, "
        "scores below 0 and pulls the mean down; see the PixIoU per class table.",
    ]
    notes += _training_notes(rows)
    notes += _trial_notes(results)
    notes += [f"[{i + 1}] {p.metric} {number(p.value)}: {p.note}" for i, p in enumerate(sources)]
    if None in published.values():
        notes.append("Published: 'not known' where no published number has this setting "
                     "(dataset, config, iterations, loss) in reports/published.yaml.")
    return Table(f"{results.dataset}: the losses compared", header, body, notes,
                 f"tab:{results.dataset}")


def plateau_text(plateau: Plateau | None) -> str:
    if plateau is None or plateau.gain is None:
        return "no curve"
    if plateau.low is None:
        return f"{number(plateau.gain, True)} (1 seed, no test)"
    return (f"{number(plateau.gain, True)} [{number(plateau.low, True)}, "
            f"{number(plateau.high, True)}] ({'settled' if plateau.settled else 'NOT settled'})")


def _training_notes(rows: list[LossRow]) -> list[str]:
    """Whether the models were trained enough, in the table's own numbers."""
    tested = [row for row in rows if row.plateau is not None and row.plateau.gain is not None]
    below = [f"{row.label} {row.classes_below_1[0]}/{row.classes_below_1[1]}" for row in rows
             if row.classes_below_1 is not None]
    notes = []
    if tested:
        first = tested[0].plateau
        notes.append(
            f"Trained enough? The plateau test: the mIoU each loss still gains over its last "
            f"{first.points} evaluations ({first.span} iterations; the least-squares line per "
            f"seed, mean and 95% interval over the seeds); settled when the interval lies "
            f"within ±{number(first.tolerance)}: "
            + ", ".join(f"{row.label} {plateau_text(row.plateau)}" for row in tested) + ".")
    if below:
        notes.append("Classes whose IoU stays below 1 (mean over the seeds), of all classes: "
                     + ", ".join(below) + ".")
    return notes


def _trial_notes(results: DatasetResults) -> list[str]:
    notes = []
    for status, what in ((FAILED, "Failed"), (STOPPED, "Stopped early by ASHA"),
                         (MISSING, f"Missing (planned, not in {results.path.name})")):
        trials = [t for t in results.trials if t.status == status]
        if not trials:
            continue
        listed = []
        for t in trials:
            listed.append(f"{t.loss} seed {t.seed}" + (f" ({t.error_line[:100]})"
                                                        if t.error_line else ""))
        notes.append(f"{what}: {len(trials)} trial(s): {'; '.join(listed)}.")
    return notes


def per_class_table(results: DatasetResults, rows: list[LossRow], metric: str = "IoU") -> Table:
    """`metric` (IoU, image-IoU or PixIoU) per class and loss, mean over the finished seeds."""
    columns = [row for row in rows if row.counts["finished"]]
    per_loss = {lr.loss: lr.finished_per_class() for lr in results.losses}
    body = []
    for name in results.classes:
        means = []
        for row in columns:
            key = f"{metric}.{name}"
            values = [pc[key] for pc in per_loss[row.loss] if key in pc]
            means.append(sum(values) / len(values) if values else None)
        best = _best(means)
        body.append([Cell(name)] + [Cell(DASH if m is None else number(m), i in best)
                                    for i, m in enumerate(means)])
    skipped = [row.label for row in rows if not row.counts["finished"]]
    notes = [f"{metric} per class, mean over the finished seeds; the best per class in bold."]
    if metric == "image-IoU":
        notes.append("image-IoU: per class, the mean IoU over the validation images where the "
                     "class is in the ground truth or the prediction.")
    if metric == "PixIoU":
        notes.append("PixIoU ≤ IoU per class; below 0 where the IoU is near 0 "
                     "(PixIoU > 2·IoU − 1).")
    if skipped:
        notes.append(f"No finished trial, so no column: {', '.join(skipped)}.")
    slug = "per-class" if metric == "IoU" else f"per-class-{metric.lower()}"
    return Table(f"{results.dataset}: {metric} per class", ["Class", *(r.label for r in columns)],
                 body, notes, f"tab:{results.dataset}-{slug}")


def data_table(results: DatasetResults) -> Table | None:
    """What the dataset's labels look like, against the targets of its data stage."""
    statistics = (results.data or {}).get("statistics")
    if not statistics:
        return None
    shares = statistics["class_share"]
    largest = sorted(shares, key=shares.get, reverse=True)[:3]
    body = [[Cell("images"), Cell(str(statistics["images"])), Cell(DASH), Cell(DASH)]]
    for key in ("objects_per_image", "object_classes_per_image"):
        value = statistics[key]
        body.append([Cell(f"{key.replace('_', ' ')} (mean; median)"),
                     Cell(f"{value['mean']:.2f}; {value['median']:g}"), Cell(DASH), Cell(DASH)])
    body.append([Cell("largest classes (pixel share)"),
                 Cell(", ".join(f"{name} {100 * shares[name]:.1f}%" for name in largest)),
                 Cell(DASH), Cell(DASH)])
    for row in (results.data or {}).get("targets") or []:
        value, bounds = row["value"], row["range"]
        shown = ", ".join(value) if isinstance(value, list) else \
            DASH if value is None else f"{value:.4g}"
        target = ", ".join(bounds) if row["target"] == "largest classes" else \
            f"[{bounds[0]:g}, {bounds[1]:g}]"
        body.append([Cell(row["target"]), Cell(shown), Cell(target),
                     Cell("yes" if row["met"] else "NO", bold=not row["met"])])
    notes = ["Computed by the data stage from the labels (pipeline/data/stats.py): an object is a "
             "connected region of one class (VOC's ignored borders part instances); object "
             "classes count the dataset's countable classes; shares are of the labelled pixels; "
             "thickness is a region's area over its longer side, over the image width. Targets: "
             f"params.yaml datasets.{results.dataset}.targets, with the figures they come from."]
    return Table(f"{results.dataset}: the labels against their targets",
                 ["Statistic", "Value", "Target", "Met"], body, notes,
                 f"tab:{results.dataset}-data", text_columns=1)


def p_value(value: float | None) -> str:
    if value is None:
        return DASH
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def claim_text(c: ClaimResult) -> str:
    if c.claim.arm == CONVERGENCE:
        return (f"{c.better_label} converges faster than {c.worse_label} "
                f"({c.claim.metric}, convergence arm)")
    return f"{c.better_label} > {c.worse_label} on {c.claim.metric}"


def verdict_text(c: ClaimResult) -> str:
    """The verdict, and with a number why it is not a decision."""
    if c.reason:
        return f"{c.verdict} ({c.reason})"
    if c.verdict == NOT_SETTLED:
        return c.verdict + " (" + "; ".join(
            f"{label} gains {plateau_text(p)} over its last evaluations"
            for label, p in c.unsettled) + ")"
    if c.verdict != INCONCLUSIVE or c.detectable is None:
        return c.verdict
    observed = abs(c.difference.mean)
    if observed < c.detectable:
        need = f"{c.needed} seeds would" if c.needed else "more than 200 seeds would"
        return (f"{c.verdict}: |Δ| {number(observed)} is below the {number(c.detectable)} "
                f"its {c.difference.n} seeds detect; {need} detect {number(observed)}")
    return (f"{c.verdict}: |Δ| {number(observed)} is above the {number(c.detectable)} its seeds "
            f"detect at 80% power, yet not significant at its Holm step")


def claims_table(claims: list[ClaimResult], confidence: float) -> Table:
    family = claims[0].family if claims else 0
    alpha = 1 - confidence
    body = []
    for c in claims:
        diff = c.difference
        body.append([
            Cell(claim_text(c)), Cell(c.claim.source), Cell(c.dataset), Cell(difference(diff)),
            Cell(p_value(c.adjusted_p)),
            Cell(DASH if c.detectable is None else number(c.detectable)),
            Cell(", ".join(map(str, diff.seeds)) if diff and diff.seeds else DASH),
            Cell(verdict_text(c), bold=True)])
    notes = [f"Δ: mean paired difference over the seeds both losses finished, with its "
             f"{confidence:.0%} confidence interval (Student t, uncorrected). p: the paired "
             f"t-test's two-sided p-value, adjusted for the {family} claims tested together "
             f"(Holm-Bonferroni; a claim with no test counts in the family as p = 1). Verdict: "
             f"reproduced if the adjusted p < {alpha:.2g} and Δ > 0, not reproduced if the "
             f"adjusted p < {alpha:.2g} and Δ < 0, inconclusive otherwise or with fewer than 2 "
             f"paired seeds; not settled, whatever p, when a loss of a fine-tuning claim fails "
             f"the plateau test (its curve still moves: the loss tables' notes).",
             f"Detectable: the smallest true Δ its seeds detect with {POWER:.0%} power at the "
             f"family's strictest level {alpha:.2g}/{family} (Holm's first step), from the "
             f"standard deviation of its paired differences (exact noncentral t; docs/study.md, "
             f"\"How many seeds\"). An inconclusive claim with |Δ| below it is smaller than "
             f"its seeds can resolve; the verdict says how many seeds |Δ| would need."]
    return Table(f"The papers' claims, checked (a family of {family})", [
        "Claim", "Source", "Dataset", f"Δ [{confidence:.0%} CI]", f"p (Holm, m={family})",
        f"Detectable Δ ({POWER:.0%} power)", "Seeds", "Verdict"], body, notes, "tab:claims",
        text_columns=3)


def gradient_table(rows: list[dict]) -> Table:
    """rows: {case, description, shifts, <loss label>: [mean |grad| on FP pixels per shift]}."""
    losses = [k for k in rows[0] if k not in ("case", "description", "shifts")]
    body = [[Cell(r["case"]), Cell(f"{r['shifts'][0]}–{r['shifts'][-1]}")] +
            [Cell(f"{r[loss][0]:.4f} → {r[loss][-1]:.4f}") for loss in losses] for r in rows]
    notes = ["Mean |gradient| over the false-positive pixels of the object's channel, at the "
             "smallest and the largest shift (pixels), in float64. Lovász-Softmax and "
             "Lovász-PixIoU: the object class's loss alone (classes=[1]), differentiated with "
             "respect to its probability p, as in the paper's argument. '…, training': the "
             "training default, classes 'present' (background and object averaged), "
             "differentiated with respect to the object's logit; the background's term reaches "
             "that logit through the softmax, so Lovász-Softmax's gradient is no longer 0 there.",
             *(f"{r['case']}: {r['description']}" for r in rows)]
    return Table("Gradient study: where IoU's gradient vanishes", [
        "Case", "Shift", *(f"FP gradient, {loss}" for loss in losses)], body, notes,
        "tab:gradients")


# --- rendering -------------------------------------------------------------------------------

def markdown(table: Table) -> str:
    def line(cells):
        return "| " + " | ".join(cells) + " |"

    cell = lambda c: f"**{c.text}**" if c.bold and c.text != DASH else c.text
    n = table.text_columns
    lines = [f"### {table.title}", "", line(table.header),
             line([":---"] * n + ["---:"] * (len(table.header) - n))]
    lines += [line([cell(c) for c in row]) for row in table.rows]
    lines += [""] + [f"{note}  " for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


_TEX = [("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
        ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"),
        ("^", r"\textasciicircum{}"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("→", r"$\to$"),
        ("∂", r"$\partial$"), ("·", r"$\cdot$"), ("—", "---"), ("–", "--"), ("á", r"\'a"),
        ("`", "")]


def tex_escape(text: str) -> str:
    # One pass, so a replacement's own backslashes and braces are never escaped again.
    out = []
    table = dict(_TEX)
    for char in text:
        out.append(table.get(char, char))
    return "".join(out)


def latex(table: Table) -> str:
    cell = lambda c: (rf"\textbf{{{tex_escape(c.text)}}}" if c.bold and c.text != DASH
                      else tex_escape(c.text))
    spec = "l" * table.text_columns + "r" * (len(table.header) - table.text_columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\footnotesize",
             rf"\caption{{{tex_escape(table.title)}}}", rf"\label{{{table.label}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(tex_escape(h) for h in table.header) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        lines += [r"\par\smallskip", r"\parbox{\linewidth}{\scriptsize " +
                  r" \\ ".join(tex_escape(n) for n in table.notes) + "}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
