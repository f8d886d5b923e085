"""python -m pipeline.train <config> --loss <loss> --seed <n> [options]"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..params import ParamsError
from ..precision import AMP_DTYPES, PrecisionError
from ..schedules import SCHEDULES
from . import __doc__ as DOC
from .run import run
from .spec import Placement, RunSpec, load_train_params
from .weights import PretrainedWeightsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="an mmseg config, e.g. mmseg_configs/<leaf>.py")
    parser.add_argument("--loss", default="ce", help="a study loss of params.yaml train.losses")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", help="default: work_dirs/<config>/<loss>_seed<seed>")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--val-interval", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--data-root", help="folder holding the datasets (default: data)")
    parser.add_argument("--init-checkpoint", help="weights to fine-tune (e.g. the pretrain "
                        "stage's models/pretrain/<dataset>/model.pth)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="config",
                        help="constant: --warmup iterations, then --lr held")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--val-subset", type=int, help="evaluate the first N validation "
                        "images while training, all of them at the end")
    parser.add_argument("--checkpoint-interval", type=int,
                        help="a multiple of --val-interval (default: every evaluation)")
    parser.add_argument("--amp", choices=AMP_DTYPES, help="mixed precision (GPU: fp16 or "
                        "bf16; CPU: bf16 under CPU autocast); default: params.yaml train.amp")
    parser.add_argument("--params", default="params.yaml",
                        help="for train.losses, train.amp and train.deterministic")
    args = parser.parse_args(argv)
    try:
        params = load_train_params(args.params)
        params.terms_of(args.loss, "--loss")
        params.check_losses([args.loss])
        if not Path(args.config).is_file():
            raise ParamsError(f"{args.config}: config not found")
        if args.seed < 0:
            raise ParamsError(f"--seed must be >= 0, got {args.seed}")
        if args.checkpoint_interval and args.val_interval and \
                args.checkpoint_interval % args.val_interval:
            raise ParamsError(f"--checkpoint-interval ({args.checkpoint_interval}) must be a "
                              f"multiple of --val-interval ({args.val_interval})")
        spec = RunSpec.from_params(
            params, config=args.config, loss=args.loss,
            terms=params.terms_of(args.loss, "--loss"), seed=args.seed, lr=args.lr,
            iterations=args.iterations, val_interval=args.val_interval,
            checkpoint_interval=args.checkpoint_interval, batch_size=args.batch_size,
            amp=args.amp or params.amp, schedule=args.schedule, warmup=args.warmup,
            val_subset=args.val_subset)
        work_dir = args.work_dir or f"work_dirs/{Path(args.config).stem}/" \
                                    f"{args.loss}_seed{args.seed}"
        summary = run(spec, Placement(work_dir, args.data_root, args.init_checkpoint))
    except (ParamsError, PretrainedWeightsError, PrecisionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({**summary.metrics, "iterations": summary.iterations,
                      "wall_time_s": summary.wall_time_s,
                      "curve": [[r["iteration"], r["mIoU"]] for r in summary.history]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
