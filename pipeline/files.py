"""Files written whole or not at all: a kill mid-write leaves the previous file (or none),
never a half-written one that a resume or a reader would trust."""
from __future__ import annotations

from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """`text` into `path`: written beside it, then renamed over it (one filesystem: atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(text)
    staging.replace(path)
