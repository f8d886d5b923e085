"""Loss benchmark: forward+backward of every loss beside one torch.sort of the same data.

    python -m bench.losses [--repeats 7] [--threads 2] [--out FILE]

All candidates run in one process, interleaved round by round, so machine noise hits them alike;
each time is the median of the rounds after a warm-up. Ratios, not seconds, are the result.
Peak extra memory is what one forward+backward allocates on top of its inputs (CPU: the torch
profiler's allocation events; CUDA: max_memory_allocated), as a multiple of the logits' size.
"""
from __future__ import annotations

import argparse
import platform
from functools import partial

import torch
import torch.nn.functional as F

from bench import record
from bench.timing import interleaved_medians

CPU_SHAPES = [(8, 21, 128, 128)]
GPU_SHAPES = [(8, 21, 128, 128), (8, 21, 512, 512), (4, 19, 512, 1024)]
MEMORY_TARGET = 4.0  # peak extra memory of a Lovász loss, as a multiple of the logits
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
    medians = interleaved_medians({name: partial(run, logits, labels)
                                   for name, run in runs.items()},
                                  repeats, lambda: synchronize(device))
    memory = {name: peak_memory(run, logits, labels) for name, run in runs.items()}
    ours = runs["ours lovasz batch"](logits, labels)
    theirs = runs["mmseg LovaszLoss batch"](logits, labels)
    ours_pi = runs["ours lovasz per-image"](logits, labels)
    theirs_pi = runs["mmseg LovaszLoss per-image"](logits, labels)
    difference = max(abs(float(ours - theirs)), abs(float(ours_pi - theirs_pi)))
    return medians, memory, difference


def peak_memory(run, logits, labels):
    """Peak of the memory that one forward+backward allocates on top of its inputs: bytes.

    CUDA: the caching allocator's high-water mark. CPU: the profiler's allocation and free
    events, summed in the order they happened (RSS would hide the peak behind earlier ones).
    """
    if logits.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run(logits, labels)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as profile:
        run(logits, labels)
    # The raw events: FunctionEvents fold the allocations made inside an op into that op.
    events = sorted((e.start_ns(), e.nbytes()) for e in profile.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    in_use = peak = 0
    for _, change in events:
        in_use += change
        peak = max(peak, in_use)
    return peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=record.default_out("losses"))
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
        medians, memory, difference = time_all(shape, device, args.repeats)
        sort_time = medians["torch.sort"]
        logits_bytes = torch.Size(shape).numel() * 4
        memory_x_logits = {name: peak / logits_bytes for name, peak in memory.items()}
        entry = dict(seconds=medians, memory_x_logits=memory_x_logits,
                     value_difference_vs_mmseg=difference)
        print(f"{'loss':<28} {'ms':>9} {'x sort':>7} {'peak extra memory x logits':>27}")
        for name, seconds in medians.items():
            print(f"{name:<28} {seconds * 1e3:>9.1f} {seconds / sort_time:>7.2f} "
                  f"{memory_x_logits[name]:>27.2f}")
        print(f"|ours - mmseg| on the loss value: {difference:.2e}")
        ratios = {}
        for name in ("ours lovasz batch", "ours lovasz per-image", "ours pixiou batch",
                     "ours pixiou per-image"):
            verdict = "ok" if memory_x_logits[name] <= MEMORY_TARGET else "MISSED"
            print(f"  {'memory ' + name:<38} {memory_x_logits[name]:5.2f}  (target <= "
                  f"{MEMORY_TARGET})  {verdict}")
        print(f"  (floor of any loss built on one batched sort of the softmax: the sort itself "
              f"{memory_x_logits['torch.sort']:.2f}x + the softmax output autograd keeps 1.00x)")
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
    record.write(args.out, "bench.losses", report)


if __name__ == "__main__":
    main()
