"""The benchmarks' one way of timing: candidates interleaved round by round in one process, so
machine noise hits them alike; each result is the median of the rounds after a warm-up."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int,
                        synchronize: Callable[[], None] = lambda: None) -> dict[str, float]:
    """name -> median seconds of `runs[name]()` over `repeats` rounds (one warm-up first).

    `synchronize` is called around each timed call (e.g. torch.cuda.synchronize on a GPU).
    """
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronize()
            start = time.perf_counter()
            run()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
