"""On a machine with a CUDA GPU: everything the study needs from a GPU, checked in one go.

    make gpu-check        (python -m bench.gpu_check [--out reports/gpu] [--iterations 100])

1. `pytest tests/gpu`: one training step and evaluation of the paper's VOC config per loss.
2. `bench.losses` at the GPU shapes: our Lovász losses against mmseg's `LovaszLoss` (and
   Berman's reference transcription, tests/reference.py, where mmseg cannot be imported).
3. Training throughput of the paper's VOC config (DeepLabV3+ R-101-D8, 512x512, the config's
   batch of 4 per GPU) on one GPU: `--iterations` steps in fp32, then under AMP (fp16 and
   bf16), each after 10 warm-up steps, on random images (the model's cost, not the loader's).
   The ratio is what `plan.cost.<dataset>.amp_speedup` takes.

One report: <out>/gpu-check-<date>.md and .json, with the commands and the machine. Exit 1 if
a step failed, 2 without a GPU. docs/gpu.md says how to run it on a GPU machine that has only
its own Python and CUDA torch.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

from bench import record

PAPER_VOC = "mmseg_configs/deeplabv3plus_r101-d8_4xb4-20k_voc12aug-512x512.py"
WARMUP = 10


def run_step(name: str, command: list[str], timeout: int) -> dict:
    print(f"\n== {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        code, output = 124, f"timed out after {timeout} s\n{expired.stdout or ''}"
    print(output[-4000:], flush=True)
    return {"name": name, "command": " ".join(command), "exit": code,
            "seconds": round(time.perf_counter() - started, 1), "tail": output[-3000:]}


def throughput(iterations: int, amp: str | None, batch: int = 4, side: int = 512) -> dict:
    """Seconds per training step of the paper VOC model on this GPU, fp32 or under `amp`."""
    import torch
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    from pipeline.precision import apply_amp

    init_default_scope("mmseg")
    cfg = Config.fromfile(PAPER_VOC)
    cfg.model.pretrained = None  # no download: the step's cost is the same
    apply_amp(cfg, amp, on_gpu=True)
    torch.backends.cudnn.benchmark = True  # what train.deterministic: true leaves on, on GPU
    model = MODELS.build(cfg.model).cuda().train()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    generator = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(batch):
        sample = SegDataSample()
        label = torch.randint(0, 21, (1, side, side), generator=generator)
        sample.gt_sem_seg = PixelData(data=label)
        sample.set_metainfo(dict(img_shape=(side, side), pad_shape=(side, side),
                                 ori_shape=(side, side)))
        samples.append(sample)
    data = dict(inputs=[torch.randint(0, 256, (3, side, side), dtype=torch.uint8,
                                      generator=generator) for _ in range(batch)],
                data_samples=samples)
    torch.cuda.reset_peak_memory_stats()
    for step in range(WARMUP + iterations):
        if step == WARMUP:
            torch.cuda.synchronize()
            started = time.perf_counter()
        losses = model.train_step(data, optim)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / iterations
    return {"amp": amp or "fp32", "s_per_iter": seconds, "images_per_s": batch / seconds,
            "train_s_per_image": seconds / batch,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2 ** 30,
            "loss": float(sum(v for k, v in losses.items() if k.startswith("loss")))}


def render(report: dict) -> str:
    lines = [f"# GPU check, {report['measured']['date']}", "",
             f"- GPU: {report['gpu']}; torch {report['torch']} (CUDA {report['cuda']})",
             f"- command: `{report['measured']['command']}` at commit "
             f"{report['measured']['commit']}", "", "| step | exit | seconds |",
             "|---|---|---|"]
    lines += [f"| `{s['command']}` | {s['exit']} | {s['seconds']} |" for s in report["steps"]]
    lines += ["", f"Training throughput, {PAPER_VOC}, batch 4 at 512x512 on one GPU, "
              f"{report['iterations']} steps after {WARMUP}:", "",
              "| precision | s / step | images / s | peak memory (GB) | speed-up over fp32 |",
              "|---|---|---|---|---|"]
    base = report["throughput"][0]["s_per_iter"] if report["throughput"] else None
    for row in report["throughput"]:
        lines.append(f"| {row['amp']} | {row['s_per_iter']:.4f} | {row['images_per_s']:.1f} | "
                     f"{row['peak_memory_gb']:.1f} | {base / row['s_per_iter']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/gpu")
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("make gpu-check needs a CUDA GPU: torch sees none here "
              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})", file=sys.stderr)
        return 2
    out = Path(args.out)
    date = datetime.date.today().isoformat()
    steps = [run_step("tests/gpu", [sys.executable, "-m", "pytest", "-q", "tests/gpu"], 300),
             run_step("bench.losses", [sys.executable, "-m", "bench.losses", "--repeats", "5",
                                       "--out", str(out / f"losses-{date}.json")], 240)]
    rows = []
    for amp in (None, "fp16", "bf16"):
        print(f"\n== throughput {amp or 'fp32'}", flush=True)
        rows.append(throughput(args.iterations, amp))
        print(rows[-1], flush=True)
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cuda": torch.version.cuda, "iterations": args.iterations, "steps": steps,
              "throughput": rows,
              "amp_speedup": {r["amp"]: rows[0]["s_per_iter"] / r["s_per_iter"]
                              for r in rows[1:]}}
    path = record.write(out / f"gpu-check-{date}.json", "bench.gpu_check", report)
    report = json.loads(path.read_text())
    (out / f"gpu-check-{date}.md").write_text(render(report))
    print(render(report))
    return 0 if all(s["exit"] == 0 for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
