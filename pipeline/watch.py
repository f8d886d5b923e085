"""What a run reports about itself besides its measures, so a trial can be watched in MLflow
while it trains: at each evaluation the learning rate, seconds per iteration, the data
loader's share of them, peak memory, and MLflow's own system metrics (CPU, memory, and GPU
utilisation where NVML sees one), averaged since the previous evaluation; and mmengine's text
log, kept with the run's files.

Only rank 0 samples the system; every rank of a trial runs on one node (STRICT_PACK), so its
machine is the trial's.
"""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

#: Keys of an evaluation record besides the measures (MLflow metrics of the same names).
RUN_METRICS = ("lr", "s_per_iter", "data_time_s", "peak_memory_mb")
#: MLflow's UI shows metrics under this prefix in a run's "System metrics" tab.
SYSTEM_PREFIX = "system/"
#: Seconds between two samples of the system (MLflow's own default is 10).
SAMPLE_EVERY_S = 5.0


def system_monitors() -> list:
    """MLflow's CPU/memory monitor, and its GPU monitor where pynvml finds a GPU."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor

    monitors = [CPUMonitor()]
    try:
        import pynvml  # noqa: F401 - MLflow's GPU monitor needs it (nvidia-ml-py)
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        monitors.append(GPUMonitor())
    except Exception:  # noqa: BLE001 - no pynvml, no driver, no GPU: CPU metrics only
        pass
    return monitors


class RunWatch:
    """Samples the system in a thread (rank 0) and reads mmengine's timers at evaluations."""

    def __init__(self, sample_system: bool, every_s: float = SAMPLE_EVERY_S):
        self._monitors = system_monitors() if sample_system else []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._every_s = every_s
        self._last_iter = 0

    def start(self, iteration: int) -> None:
        self._last_iter = iteration
        if self._monitors and self._thread is None:
            self._sample()  # one sample even for a run shorter than the interval
            self._thread = threading.Thread(target=self._loop, name="system-metrics",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self._every_s)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self._every_s):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            for monitor in self._monitors:
                try:
                    monitor.collect_metrics()
                except Exception:  # noqa: BLE001 - a sensor that fails is left out
                    pass

    def system(self) -> dict[str, float]:
        """The system metrics' means since the last call, under SYSTEM_PREFIX."""
        self._sample()
        values = {}
        with self._lock:
            for monitor in self._monitors:
                values.update(monitor.aggregate_metrics())
                monitor.clear_metrics()
        return {SYSTEM_PREFIX + k: float(v) for k, v in values.items()}

    def run_metrics(self, runner) -> dict[str, float | None]:
        """lr, mean seconds per iteration and data time since the last evaluation, peak
        memory (GPU: allocated by torch; CPU: the process's resident set) in MB."""
        import torch

        window = max(1, runner.iter - self._last_iter)
        self._last_iter = runner.iter
        hub = runner.message_hub

        def mean(key: str) -> float | None:
            buffer = hub.log_scalars.get(key)
            return float(buffer.mean(window)) if buffer is not None and len(buffer.data[0]) \
                else None

        lrs = runner.optim_wrapper.get_lr().get("lr") or [None]
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / 2 ** 20
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
        return {"lr": lrs[0], "s_per_iter": mean("train/time"),
                "data_time_s": mean("train/data_time"), "peak_memory_mb": float(peak)}


def keep_log(runner, work_dir: Path, folder: str) -> None:
    """Copy this attempt's mmengine log into `work_dir/folder` (the run's files)."""
    log = Path(runner.log_dir) / f"{runner.timestamp}.log"
    if log.is_file():
        target = Path(work_dir, folder)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, target / log.name)
