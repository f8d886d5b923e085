"""The sweep's log lines."""
from __future__ import annotations


def log(message: str) -> None:
    print(f"[sweep] {message}", flush=True)


def said(error: Exception) -> str:
    """An error in one line, for a log line."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"
