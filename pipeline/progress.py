"""Where a long stage stands: done / running / waiting, the time spent and the time left at the
pace so far. The sweep shows it as it goes (a bar in a terminal, one line per change in a log,
which is what `dvc repro` and CI keep); `python -m pipeline.status` prints the same from MLflow
while a study runs in another terminal."""
from __future__ import annotations

import sys
import time


def duration(seconds: float) -> str:
    """3725 -> '1h02m05s', 95 -> '1m35s', 7 -> '7s'."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def standing(done: int, running: int, total: int, elapsed: float) -> str:
    """'7/15 done, 2 running, 6 waiting; 3m10s elapsed, about 3m37s left'."""
    waiting = max(0, total - done - running)
    text = f"{done}/{total} done, {running} running, {waiting} waiting; {duration(elapsed)} elapsed"
    if done and done < total:
        text += f", about {duration(elapsed * (total - done) / done)} left"
    return text


class Progress:
    """The trials of one sweep as they start and end."""

    def __init__(self, what: str, total: int, log, stream=None):
        self.what, self.total, self.log = what, total, log
        self.done = self.running = 0
        self.started = time.time()
        stream = stream or sys.stdout
        self.bar = None
        if stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit="trial", file=stream, leave=True)

    def trial_started(self) -> None:
        self.running += 1
        self._show()

    def trial_ended(self) -> None:
        self.running = max(0, self.running - 1)
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        self._show()

    def line(self) -> str:
        return standing(self.done, self.running, self.total, time.time() - self.started)

    def _show(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.running} running", refresh=True)
        else:
            self.log(f"{self.what}: {self.line()}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
