"""mmengine's process-wide state, and the study's runner (registered once in mmengine's
RUNNERS), which loads only its own checkpoints with full unpickling."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmengine.utils import ManagerMixin


def _manager_classes():
    stack, seen = [ManagerMixin], []
    while stack:
        cls = stack.pop()
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen


@contextmanager
def isolated_mmengine_state() -> Iterator[None]:
    """Drop the loggers, visualizers, message hubs and scopes a run created when it ends.

    mmengine keeps them in process-wide registries (ManagerMixin); several runs in one process
    (tests, a Ray worker reused) would otherwise write to each other's log files.
    """
    before = {cls: dict(cls._instance_dict) for cls in _manager_classes()}
    try:
        yield
    finally:
        for cls in _manager_classes():
            kept = before.get(cls, {})
            for name in [n for n in cls._instance_dict if n not in kept]:
                instance = cls._instance_dict.pop(name)
                if isinstance(instance, logging.Logger):
                    for handler in list(instance.handlers):
                        handler.close()
                        instance.removeHandler(handler)


@contextmanager
def trusted_checkpoint_loading() -> Iterator[None]:
    """torch 2.13 loads with weights_only=True, which mmengine's resume checkpoints (message hub,
    history buffers) do not pass (STACK.md trap 4). Allow full unpickling only here, around the
    loading of this run's own checkpoints from its own work dir."""
    previous = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = previous


@RUNNERS.register_module()
class StudyRunner(Runner):
    """mmengine's Runner, loading the run's own resume checkpoints as trusted ones."""

    def load_or_resume(self) -> None:
        with trusted_checkpoint_loading():
            super().load_or_resume()
