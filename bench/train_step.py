"""Training-step benchmark of the embedded default model with each study loss, side by side.

    python -m bench.train_step [--repeats 15] [--threads 1] [--out FILE]

One mmengine `train_step` (forward, loss, backward, AdamW step) of the embedded-default
segmentor on one fixed batch, for CE, Lovász-Softmax and Lovász-PixIoU, interleaved round by
round so machine noise hits them alike; each time is the median after a warm-up. The loss's share
of the step is its own forward+backward on logits of the decode head's output size, timed in the
same rounds. Target: the PixIoU step at most 1.15x the Lovász-Softmax step. One thread by
default: that is what a sweep trial gets on a CPU.
"""
from __future__ import annotations

import argparse
import platform

import torch

from bench import record
from bench.timing import interleaved_medians

CONFIG = "mmseg_configs/fcn_r18-tiny-d8_1xb4-160_synthetic-voc-128x128.py"
LOSSES = {"ce": [{"type": "CrossEntropyLoss", "loss_weight": 1.0}],
          "lovasz": [{"type": "LovaszSoftmaxLoss", "loss_weight": 1.0}],
          "pixiou": [{"type": "LovaszPixIoULoss", "loss_weight": 1.0}]}
TARGET = ("pixiou", "lovasz", 1.15)


def make_batch(cfg, seed=0):
    """A batch shaped like the config's training batches: blobs of a few classes."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    generator = torch.Generator().manual_seed(seed)
    height, width = cfg.crop_size
    classes = cfg.model.decode_head.num_classes
    inputs, samples = [], []
    for _ in range(cfg.train_dataloader.batch_size):
        label = torch.zeros(height, width, dtype=torch.long)
        for c in torch.randint(1, classes, (8,), generator=generator).tolist():
            top, left = torch.randint(0, height - 32, (2,), generator=generator).tolist()
            label[top:top + 32, left:left + 32] = c
        label[:2] = 255
        inputs.append(torch.randint(0, 255, (3, height, width), generator=generator,
                                    dtype=torch.uint8))
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label[None])
        sample.set_metainfo(dict(img_shape=(height, width), ori_shape=(height, width),
                                 pad_shape=(height, width)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def build(loss):
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS

    from pipeline.train import Placement, RunSpec, build_config

    cfg = build_config(RunSpec(config=CONFIG, loss=loss, terms=LOSSES[loss], seed=0),
                       Placement("unused"))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.train()
    return cfg, model, build_optim_wrapper(model, cfg.optim_wrapper)


def loss_alone(cfg, loss):
    from mmseg.registry import MODELS

    import pipeline.losses  # noqa: F401  (registers our losses)

    modules = [MODELS.build(c) for c in LOSSES[loss]]
    height, width = cfg.crop_size
    shape = (cfg.train_dataloader.batch_size, cfg.model.decode_head.num_classes, height, width)
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 8, (shape[0], height, width),
                           generator=torch.Generator().manual_seed(2))

    def run():
        x = logits.detach().requires_grad_(True)
        sum(m(x, labels, ignore_index=255) for m in modules).backward()
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=record.default_out("train_step"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from mmengine.registry import init_default_scope

    import pipeline.losses  # noqa: F401 - registers the losses
    init_default_scope("mmseg")
    steps, alone = {}, {}
    for loss in LOSSES:
        cfg, model, optim = build(loss)
        batch = make_batch(cfg)
        steps[loss] = (lambda m=model, o=optim, b=batch: m.train_step(b, o))
        alone[loss] = loss_alone(cfg, loss)
    runs = {f"step {k}": v for k, v in steps.items()} | {f"loss {k}": v
                                                         for k, v in alone.items()}
    medians = interleaved_medians(runs, args.repeats)
    print(f"== {CONFIG}: train_step, {args.threads} thread(s), median of {args.repeats} ==")
    print(f"{'loss':<8} {'step ms':>9} {'x CE':>6} {'loss ms':>9} {'loss share':>11}")
    shares = {}
    for loss in LOSSES:
        step, own = medians[f"step {loss}"], medians[f"loss {loss}"]
        shares[loss] = own / step
        print(f"{loss:<8} {step * 1e3:>9.1f} {step / medians['step ce']:>6.2f} "
              f"{own * 1e3:>9.1f} {shares[loss]:>10.0%}")
    num, den, bound = TARGET
    ratio = medians[f"step {num}"] / medians[f"step {den}"]
    print(f"  step {num} / step {den}: {ratio:.3f}  (target <= {bound})  "
          f"{'ok' if ratio <= bound else 'MISSED'}")
    report = dict(config=CONFIG, device=platform.processor() or platform.machine(),
                  torch=torch.__version__, threads=args.threads, repeats=args.repeats,
                  seconds=medians, loss_share=shares, ratio={f"{num}/{den}": ratio},
                  target=bound)
    record.write(args.out, "bench.train_step", report)


if __name__ == "__main__":
    main()
