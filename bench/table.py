"""The benchmark table of docs/benchmarks.md, generated from the benchmarks' records.

    python -m bench.table [FOLDER]           # print it (FOLDER: reports/bench, the committed)
    python -m bench.table --write [FOLDER]   # write it into docs/benchmarks.md, between markers

Every number comes from a record, with the date, commit and command that measured it.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from bench.record import COMMITTED

BEGIN, END = "<!-- bench:begin (python -m bench.table --write) -->", "<!-- bench:end -->"
DOC = Path("docs/benchmarks.md")


def _verdict(value: float, bound: float, at_most: bool = True) -> str:
    ok = value <= bound if at_most else value >= bound
    return "ok" if ok else "**missed**"


def rows(folder: Path) -> tuple[list[list[str]], list[dict]]:
    from bench.losses import MEMORY_TARGET, TARGETS
    from bench.sweep_parallel import TARGET as SWEEP_TARGET
    from bench.train_step import TARGET as STEP_TARGET

    losses = json.loads((folder / "losses.json").read_text())
    step = json.loads((folder / "train_step.json").read_text())
    sweep = json.loads((folder / "sweep_parallel.json").read_text())
    evaluation = json.loads((folder / "evaluation.json").read_text())
    (shape, entry), *_ = losses["shapes"].items()  # the first shape: the CPU one
    r, mem, sec = entry["ratios"], entry["memory_x_logits"], step["seconds"]
    lovasz_bound, pixiou_bound = TARGETS["lovasz_batch / sort"][2], \
        TARGETS["pixiou_batch / lovasz_batch"][2]
    worst = lambda *values: max(values)  # noqa: E731 - a target holds for every variant
    share = step["loss_share"]
    num, den, step_bound = STEP_TARGET
    table = [
        [f"`bench.losses`, ({shape.replace('x', ', ')}), {losses['threads']} threads: "
         "Lovász-Softmax / one float `torch.sort`",
         f"{r['lovasz_per_image / sort']:.2f} per image, {r['lovasz_batch / sort']:.2f} batch",
         f"≤ {lovasz_bound} " + _verdict(worst(r["lovasz_per_image / sort"],
                                                r["lovasz_batch / sort"]), lovasz_bound)],
        ["same: Lovász-PixIoU / Lovász-Softmax",
         f"{r['pixiou_per_image / lovasz_per_image']:.2f} per image, "
         f"{r['pixiou_batch / lovasz_batch']:.2f} batch",
         f"≤ {pixiou_bound} " + _verdict(worst(r["pixiou_per_image / lovasz_per_image"],
                                                r["pixiou_batch / lovasz_batch"]), pixiou_bound)],
        ["same: peak extra memory vs logits, Lovász / PixIoU (batch)",
         f"{mem['ours lovasz batch']:.1f}x / {mem['ours pixiou batch']:.1f}x",
         f"≤ {MEMORY_TARGET:g}x " + _verdict(worst(mem["ours lovasz batch"],
                                                   mem["ours pixiou batch"]), MEMORY_TARGET)],
        ["same: speed-up over mmseg's `LovaszLoss` (batch); the loss values differ by "
         f"{entry['value_difference_vs_mmseg']:.1e}",
         f"{r['mmseg_batch / ours_batch (speed-up)']:.1f}x", ""],
        [f"`bench.train_step`, embedded default, {step['threads']} thread(s): step with "
         "CE / Lovász / PixIoU",
         f"{sec['step ce'] * 1e3:.0f} / {sec['step lovasz'] * 1e3:.0f} / "
         f"{sec['step pixiou'] * 1e3:.0f} ms (the loss: {share['ce']:.0%}, "
         f"{share['lovasz']:.0%}, {share['pixiou']:.0%} of the step)", ""],
        ["same: PixIoU step / Lovász step", f"{step['ratio'][f'{num}/{den}']:.2f}",
         f"≤ {step_bound} " + _verdict(step["ratio"][f"{num}/{den}"], step_bound)],
        [f"`bench.sweep_parallel`: {sweep['trials']} one-CPU trials ({sweep['iterations']} "
         f"iterations), {min(sweep['trials'], sweep['cpus'])} at a time vs one after another",
         f"{sweep['efficiency']:.0%}",
         f"≥ {SWEEP_TARGET:.0%} " + _verdict(sweep["efficiency"], SWEEP_TARGET, at_most=False)],
        ["same, counting only the time inside the trials' training",
         f"{sweep['run_efficiency']:.0%}", ""],
        *_evaluation_rows(evaluation),
    ]
    return table, [record_.get("measured") for record_ in (losses, step, sweep, evaluation)]


def _evaluation_rows(evaluation: dict) -> list[list[str]]:
    passes = evaluation["evaluation_seconds"]
    (one, one_s), (batched, batched_s) = passes.items()
    every_40 = evaluation["trial"]["every 40"]
    return [
        [f"`bench.evaluation`, {evaluation['dataset']}, {evaluation['threads']} thread: a training "
         "iteration; an evaluation of the validation set at " + f"{one} / {batched}",
         f"{evaluation['train_seconds_per_iteration'] * 1e3:.0f} ms; {one_s:.2f} / "
         f"{batched_s:.2f} s ({evaluation['speedup']:.2f}x)", ""],
        ["same: a 160-iteration trial's time spent evaluating, every 40 iterations, at "
         f"{one} / {batched}", f"{every_40[one]['evaluation_share']:.0%} / "
         f"{every_40[batched]['evaluation_share']:.0%}", ""],
    ]


def markdown(folder: Path) -> str:
    table, measured = rows(folder)
    lines = ["| benchmark | result | target |", "|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    lines.append("")
    for name, m in zip(("losses", "train_step", "sweep_parallel", "evaluation"), measured,
                       strict=True):
        lines.append(f"- `{name}`: " + (f"`{m['command']}` on {m['date']}, commit {m['commit']}, "
                                        f"{m['machine']}" if m else "when and how: not recorded"))
    return "\n".join(lines) + "\n"


BLOCK = re.compile(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), re.S)


def written_table(doc: Path = DOC) -> str:
    """The table as the document holds it now."""
    found = BLOCK.search(doc.read_text())
    if not found:
        raise SystemExit(f"{doc}: no '{BEGIN}' ... '{END}' block for the table")
    return found.group(1)


def write(folder: Path, doc: Path = DOC) -> None:
    written_table(doc)  # the block is there
    doc.write_text(BLOCK.sub(lambda _: f"{BEGIN}\n{markdown(folder)}{END}", doc.read_text()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(COMMITTED))
    parser.add_argument("--write", action="store_true", help=f"write it into {DOC}")
    args = parser.parse_args(argv)
    if args.write:
        write(Path(args.folder))
    else:
        sys.stdout.write(markdown(Path(args.folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
