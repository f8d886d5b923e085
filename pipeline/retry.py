"""Retry with back-off: one helper for every call that talks to a service which may hiccup
(an object store, a tracking server), so that a transient error costs a wait, not a trial.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Attempts of a storage call, and the wait before the second (doubled each time): 1+2+4+8 s.
STORAGE_ATTEMPTS = 5
FIRST_WAIT_S = 1.0


def with_backoff(call: Callable[[], T], what: str, attempts: int = STORAGE_ATTEMPTS,
                 first_wait_s: float = FIRST_WAIT_S,
                 retry_on: tuple[type[BaseException], ...] = (OSError,),
                 log: Callable[[str], None] | None = None) -> T:
    """`call()`, again after 1, 2, 4... s while it raises one of `retry_on`; the last error
    propagates. `what` names the call in the log line of each retry."""
    wait = first_wait_s
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except retry_on as error:
            if attempt == attempts:
                raise
            text = str(error).strip().splitlines()
            (log or print)(f"[retry] {what}: {type(error).__name__}: "
                           f"{text[0][:200] if text else ''}; attempt {attempt + 1} of "
                           f"{attempts} in {wait:g} s")
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")
