"""Loss benchmark: forward+backward of every loss beside one torch.sort of the same data.

    python -m bench.losses [--repeats 7] [--threads 2] [--out reports/bench/losses.json]

All candidates run in one process, interleaved round by round, so machine noise hits them alike;
each time is the median of the rounds after a warm-up. Ratios, not seconds, are the result.
Peak extra memory is measured in a fresh child process per loss (CPU: growth of the peak RSS
over inputs already allocated; CUDA: max_memory_allocated), as a multiple of the logits' size.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

CPU_SHAPES = [(8, 21, 128, 128)]
GPU_SHAPES = [(8, 21, 128, 128), (8, 21, 512, 512), (4, 19, 512, 1024)]
TARGETS = {  # ratio name -> (numerator, denominator, bound)
    "lovasz_batch / sort": ("ours lovasz batch", "torch.sort", 2.0),
    "lovasz_per_image / sort": ("ours lovasz per-image", "torch.sort", 2.0),
    "pixiou_batch / lovasz_batch": ("ours pixiou batch", "ours lovasz batch", 1.3),
    "pixiou_per_image / lovasz_per_image": ("ours pixiou per-image", "ours lovasz per-image", 1.3),
}


def make_inputs(shape, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batch, classes, height, width = shape
    logits = torch.randn(shape, generator=generator).to(device)
    labels = torch.randint(0, classes, (batch, height, width), generator=generator)
    labels[torch.rand(batch, height, width, generator=generator) < 0.05] = 255
    return logits, labels.to(device)


def candidates():
    """name -> callable(logits, labels) running forward + backward (or the bare sort)."""
    from mmseg.models.losses import LovaszLoss

    from pipeline.losses import LovaszPixIoULoss, LovaszSoftmaxLoss

    def fwd_bwd(module):
        def run(logits, labels):
            x = logits.detach().requires_grad_(True)
            loss = module(x, labels, ignore_index=255)
            loss.backward()
            return loss.detach()
        return run

    def sort(logits, labels):
        return logits.detach().reshape(-1, logits.shape[2] * logits.shape[3]).sort(-1)[0]

    def ce(logits, labels):
        x = logits.detach().requires_grad_(True)
        loss = F.cross_entropy(x, labels, ignore_index=255)
        loss.backward()
        return loss.detach()

    return {
        "torch.sort": sort,
        "cross-entropy": ce,
        "mmseg LovaszLoss per-image": fwd_bwd(LovaszLoss(per_image=True, reduction="mean")),
        "mmseg LovaszLoss batch": fwd_bwd(LovaszLoss(per_image=False, reduction="none")),
        "ours lovasz per-image": fwd_bwd(LovaszSoftmaxLoss(per_image=True)),
        "ours lovasz batch": fwd_bwd(LovaszSoftmaxLoss(per_image=False)),
        "ours pixiou per-image": fwd_bwd(LovaszPixIoULoss(per_image=True)),
        "ours pixiou batch": fwd_bwd(LovaszPixIoULoss(per_image=False)),
    }


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_all(shape, device, repeats):
    logits, labels = make_inputs(shape, device)
    runs = candidates()
    for run in runs.values():  # warm-up
        run(logits, labels)
    times = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved rounds
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run(logits, labels)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    ours = runs["ours lovasz batch"](logits, labels)
    theirs = runs["mmseg LovaszLoss batch"](logits, labels)
    ours_pi = runs["ours lovasz per-image"](logits, labels)
    theirs_pi = runs["mmseg LovaszLoss per-image"](logits, labels)
    difference = max(abs(float(ours - theirs)), abs(float(ours_pi - theirs_pi)))
    return medians, difference


def peak_memory(name, shape, device):
    """Peak extra memory of one forward+backward, in a fresh process: bytes."""
    code = f"""
import resource, torch
from bench.losses import candidates, make_inputs
device = torch.device({str(device)!r})
run = candidates()[{name!r}]
run(*make_inputs((1, {shape[1]}, 16, 16), device))  # initialise kernels and thread pools
logits, labels = make_inputs({tuple(shape)!r}, device)
if device.type == 'cuda':
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run(logits, labels); torch.cuda.synchronize()
    print(torch.cuda.max_memory_allocated() - base)
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(logits, labels)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent)
    return int(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="reports/bench/losses.json")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory children")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = GPU_SHAPES if device.type == "cuda" else CPU_SHAPES
    report = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else
                  platform.processor() or platform.machine(), torch=torch.__version__,
                  threads=args.threads, repeats=args.repeats, shapes={})
    for shape in shapes:
        print(f"\n== {device.type} {shape}: forward+backward, median of {args.repeats} "
              f"after a warm-up ==", flush=True)
        medians, difference = time_all(shape, device, args.repeats)
        sort_time = medians["torch.sort"]
        logits_bytes = torch.Size(shape).numel() * 4
        entry = dict(seconds=medians, value_difference_vs_mmseg=difference, memory_x_logits={})
        print(f"{'loss':<28} {'ms':>9} {'x sort':>7} {'mem x logits':>13}")
        for name, seconds in medians.items():
            memory = None
            if not args.no_memory and name != "torch.sort":
                memory = peak_memory(name, shape, device) / logits_bytes
                entry["memory_x_logits"][name] = memory
            mem = "" if memory is None else f"{memory:.2f}"
            print(f"{name:<28} {seconds * 1e3:>9.1f} {seconds / sort_time:>7.2f} {mem:>13}")
        print(f"|ours - mmseg| on the loss value: {difference:.2e}")
        ratios = {}
        for label, (num, den, bound) in TARGETS.items():
            ratios[label] = medians[num] / medians[den]
            verdict = "ok" if ratios[label] <= bound else "MISSED"
            print(f"  {label:<38} {ratios[label]:5.2f}  (target <= {bound})  {verdict}")
        speedup = medians["mmseg LovaszLoss batch"] / medians["ours lovasz batch"]
        ratios["mmseg_batch / ours_batch (speed-up)"] = speedup
        print(f"  {'speed-up over mmseg LovaszLoss, batch':<38} {speedup:5.2f}"
              + ("  (GPU target >= 5)" if device.type == "cuda" else ""))
        entry["ratios"] = ratios
        report["shapes"]["x".join(map(str, shape))] = entry
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
